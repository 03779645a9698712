"""Beyond one test AUC: the clinical audit of a run (operating points, calibration, subgroups,
adjudicated labels) and external validation on data sets the models never saw."""
