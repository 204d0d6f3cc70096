"""Style-mixing matrix of an official or stylegan2-fair network pickle. See `python style_mixing.py --help`."""
from stylegan2_fair.cli.style_mixing import main

if __name__ == '__main__':
    main()
