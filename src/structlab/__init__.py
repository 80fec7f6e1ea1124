"""structlab."""
