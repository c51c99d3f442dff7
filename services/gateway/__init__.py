"""The key gateway: the portal's HTTPS listener (``app`` the application, ``__main__`` the process)."""
