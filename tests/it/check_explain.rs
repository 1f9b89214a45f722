//! check_explain end-to-end tests (being written).
