"""Managed recovery of a lost pod (sweep-watch --manage): health, recovery, the watch loop, its record."""
