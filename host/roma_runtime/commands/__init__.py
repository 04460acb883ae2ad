"""One module per `roma` command (cli.py finds them by name). Each command imports the layers it runs inside its
`run`, not at the top: `roma --help`, `roma tokenize` or a command's argument error do not pay for loading the
engine, the compiler, pynq or torch."""
