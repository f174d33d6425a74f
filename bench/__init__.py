"""tokenwire's benchmark: tokenwire against a naive worker and against the floor (``make bench``)."""
