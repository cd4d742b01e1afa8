"""MoNE Explorer, the Gradio app: `app.app` builds the page, `app.inference` computes everything it shows."""
