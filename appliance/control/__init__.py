"""Local control socket: JSON lines over a unix socket (status and commands of each daemon)."""
