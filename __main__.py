"""`python -m skinedge ...` is the `skinedge` command."""

from skinedge.cli import main

if __name__ == "__main__":
    main()
