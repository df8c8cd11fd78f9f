"""The shipped profiles (YAML), installed as the data package steadyscribe.profile_files."""
