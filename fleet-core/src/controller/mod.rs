//! The sans-IO controller. (In progress.)
