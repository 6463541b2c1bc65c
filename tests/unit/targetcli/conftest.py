"""Fixtures of the shell tests; their code is in shell_fakes.py."""

from shell_fakes import daemons, dr_certificate, lio, make_shell, sh  # noqa: F401
