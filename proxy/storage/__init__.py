"""Storage: the only code that talks to Redis. Scripts called by their spec
(``scripts``), key names (``keys``), the data model (``model``), the multiplexed connection
(``pipelining``) and the client (``store``)."""
