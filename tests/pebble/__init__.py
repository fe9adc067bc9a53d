"""pebble's test servers (the Debian `pebble` package), started by tests on loopback."""
