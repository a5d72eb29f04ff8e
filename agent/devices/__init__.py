"""USB device control: what a device is, which rules apply to it, what to do with it."""
