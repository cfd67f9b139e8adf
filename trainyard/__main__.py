"""`python -m trainyard` runs the command line."""

from trainyard.cli import main

main()
