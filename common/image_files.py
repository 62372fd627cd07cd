"""Which files are images, for every folder the project reads (frame folders, galleries, datasets)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
