//! Loading and saving images.json: atomic, durable, no rewrite on no-op, corrupt files reported.
