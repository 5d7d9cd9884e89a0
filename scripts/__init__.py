"""Developer and CI helper scripts (`python -m scripts.<name>`)."""
