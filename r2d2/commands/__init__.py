"""One module per `r2d2` sub-command; each defines `register(subparsers)` and an optional ORDER."""
