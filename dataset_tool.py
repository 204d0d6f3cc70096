"""Create training datasets (zip or folder with dataset.json); see stylegan2_fair/cli/dataset_tool.py."""
from stylegan2_fair.cli.dataset_tool import main

if __name__ == '__main__':
    main()
