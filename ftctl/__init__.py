"""ftctl: the command line, the one-command demo and the local stack launcher (imports both app and worker)."""
