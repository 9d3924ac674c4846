//! flock guards (shared/exclusive, wait policies, timeouts); knows nothing of what it protects.
