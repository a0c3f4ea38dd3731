"""`python -m mixer`: the same command as `mixer`."""

from mixer.cli import main

if __name__ == "__main__":
    main()
