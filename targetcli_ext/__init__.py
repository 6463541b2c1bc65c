"""targetcli shell extension: /replication nodes (configuration and status)."""
