//! Hub requests.
