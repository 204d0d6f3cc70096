"""Train a StyleGAN2-ADA model with optional fairness methods. See `python train.py --help`."""
from stylegan2_fair.cli.train import main

if __name__ == '__main__':
    main()
