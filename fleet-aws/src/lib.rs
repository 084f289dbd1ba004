//! The AWS SDK configuration fleet shares.
