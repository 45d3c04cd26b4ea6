"""The provincial monitoring report: plan, figures and rendering."""
