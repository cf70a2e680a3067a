"""`python -m trainscope ...` is the `trainscope` command."""
from trainscope.cli import main

if __name__ == "__main__":
    main()
