"""Project an image into the latent space of a network pickle. See `python projector.py --help`."""
from stylegan2_fair.cli.projector import main

if __name__ == '__main__':
    main()
