"""Test helpers shared by every tier (simulated disks, ...)."""
