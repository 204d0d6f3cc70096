"""Search a class-balanced dataset out of a biased generator (model rebalancing). See `python rebalance.py --help`."""
from stylegan2_fair.cli.rebalance import main

if __name__ == '__main__':
    main()
