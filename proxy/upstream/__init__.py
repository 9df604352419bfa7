"""The client to the Anthropic API (``client``) and early uploads of large bodies
(``upload``). Knows nothing of Redis or money."""
