"""The admin API: organizations, members and credentials (``orgs``), extra-usage settings
(``extra_usage``), billing records (``billing``) and Enterprise requests (``requests``)."""
