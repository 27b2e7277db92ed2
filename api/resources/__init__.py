"""One module per resource, each with a flask-smorest Blueprint named `blp`."""
