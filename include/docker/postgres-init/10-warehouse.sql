-- The database the automations write to (Airflow connection `warehouse`, WAREHOUSE_DB in
-- docker-compose.yaml), on the same server as Airflow's metadata database and owned by the same role.
-- The postgres image runs this once, when it initialises an empty data volume.
CREATE DATABASE warehouse;
