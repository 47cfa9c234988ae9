//! Entry points for the coverage-guided fuzz targets in `fuzz/` (feature `fuzzing`); not a public API.
