//! egressd policy service (control plane): serves org policies to runners,
//! ingests their audit records into PostgreSQL, exports them.
