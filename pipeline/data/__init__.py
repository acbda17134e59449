"""The competition's data: scanning a folder, splits, transforms, DataLoaders, submission CSVs, the demo set.

Nothing here trains or blends; training and ensemble build on it."""
