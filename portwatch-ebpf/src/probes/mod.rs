mod bind;
mod doctor;
mod holders;
mod lease;
mod release;
mod remap;
mod state;
mod task_file;
