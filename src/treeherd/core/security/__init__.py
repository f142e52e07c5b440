"""Pure decisions of the cluster's security: join tokens, roles, certificate renewal times."""
