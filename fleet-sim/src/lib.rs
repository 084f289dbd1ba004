//! Offline simulator: runs the real fleet controller and strategies under virtual time against a forecast and ranks the strategies by cost and wait.
