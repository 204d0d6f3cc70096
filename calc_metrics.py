"""Metrics of an official or stylegan2-fair network pickle. See `python calc_metrics.py --help`."""
from stylegan2_fair.cli.calc_metrics import main

if __name__ == '__main__':
    main()
