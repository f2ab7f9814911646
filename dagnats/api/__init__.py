"""What programs use: the client, its views, the workflow builder and file loader."""
