"""The bundled market-data sample (see README.md here): package data, read by `data.csv_source`."""
