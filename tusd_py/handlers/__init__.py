"""One module per HTTP method of the tus protocol."""
