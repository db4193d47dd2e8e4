//! `ferry image build`.

use crate::cli::ImageBuildArgs;
use crate::exit::{CliError, CliResult};
use crate::output::{bytes, print_json};

pub async fn build(a: ImageBuildArgs) -> CliResult {
    let guest_bin = match a.guest_bin {
        Some(p) => p,
        None => ferry_image::find_guest_binary().map_err(|e| CliError::failed(e.to_string()))?,
    };
    let mut opts = ferry_image::BuildOptions::new(guest_bin);
    if let Some(dir) = a.cache_dir {
        opts.cache_dir = dir;
    }
    opts.force = a.force;
    let quiet = a.json.json;
    // Downloads and unpacking block: keep them off the async workers.
    let image = tokio::task::spawn_blocking(move || {
        ferry_image::build(&opts, &mut |step: &str| {
            if !quiet {
                eprintln!("  {step}");
            }
        })
    })
    .await
    .map_err(|e| CliError::failed(format!("image build task failed: {e}")))?
    .map_err(|e| CliError::failed(e.to_string()))?;
    if a.json.json {
        return print_json(&serde_json::json!({
            "dir": image.dir,
            "kernel": image.kernel,
            "initrd": image.initrd,
            "manifest": image.manifest,
        }));
    }
    println!(
        "image {} ready in {}",
        image.manifest.name,
        image.dir.display()
    );
    println!(
        "  kernel  {} ({}, {})",
        image.manifest.kernel_release,
        image.manifest.kernel_package,
        bytes(image.manifest.kernel.size)
    );
    println!("  initrd  {}", bytes(image.manifest.initrd.size));
    Ok(())
}
