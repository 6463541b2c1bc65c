"""The write fork: journal (write-ahead) + local mirror + overflow bitmap. See docs/volume.md."""
