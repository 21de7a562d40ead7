"""Connection-model research (issue 10 section 2): prototypes and measurements, not product code."""
