"""The SQL side of newsq: typed models, engines, bulk writes, migrations and the results view."""
