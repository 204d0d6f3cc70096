"""Generate images from an official or stylegan2-fair network pickle. See `python generate.py --help`."""
from stylegan2_fair.cli.generate import main

if __name__ == '__main__':
    main()
