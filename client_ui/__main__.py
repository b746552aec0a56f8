"""`python -m client_ui`: start the drawing app."""

from client_ui.main import main

main()
