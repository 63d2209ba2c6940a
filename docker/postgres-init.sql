-- Runs once, when the postgres volume is first created. POSTGRES_DB creates the gradq
-- database; MLflow's tracking store gets its own.
CREATE DATABASE mlflow;
